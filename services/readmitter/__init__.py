"""The readmitter service: staged readmission of clients after an overload incident."""
