from sensors.app import main

main()
