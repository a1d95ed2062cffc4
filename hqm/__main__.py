from hqm.cli.main import main

main()
