from mfhelm.cli import main

main()
