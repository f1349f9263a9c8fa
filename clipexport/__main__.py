from clipexport.cli import main

main()
