from services.cli import module_main

module_main("readmitter")
