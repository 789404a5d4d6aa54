"""How fedmq talks MQTT: broker URLs, paho client set-up, the bounded inbox.

Shared by the coordinator's and the agent's adapters; imports only :mod:`protocol` and paho.
"""
