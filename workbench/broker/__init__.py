"""The broker: a pure state machine (``state``) driven by one ZeroMQ socket loop (``server``)."""
