from kdray.cli import main

main()
