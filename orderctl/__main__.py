from orderctl.main import main

main()
