from imflow.cli import main

main()
