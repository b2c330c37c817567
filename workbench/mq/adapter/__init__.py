"""berryMQ's adapters: sources of messages that run in a daemon thread of their own.

``timer.IntervalTimer`` sends ``<id>:tick`` at an interval; ``fileobserver.FileObserver`` sends
``<id>:created``, ``:removed`` and ``:modified`` for the files of a glob. (berryMQ's Growl and
wxPython adapters are not re-created: they forward to desktop software, not to processes.)
"""
