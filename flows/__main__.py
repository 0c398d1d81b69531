from posepipe.flows.cli import main

main()
