from hqm.cli import main

main()
