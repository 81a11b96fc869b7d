from emosteer.cli import main

main()
