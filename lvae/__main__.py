from lvae.cli import main

main()
