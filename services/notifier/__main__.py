from services.launch.cli import module_main

module_main("notifier")
