"""The parts app.py wires together to consume Twilio Media Streams, one concern a module.

Data flows one way: socket -> frame (websocket) -> message -> event (messages)
-> stream state (stream) -> handlers (handlers: console, recording, speech, yours).
"""
