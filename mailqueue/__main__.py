from mailqueue.cli import main

main()
