"""The device side: the pure agent core, its trainers and the paho adapter."""
