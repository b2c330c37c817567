"""The client side: a session with a broker (``connection``), finding or starting one
(``embedded``), and the NetWorkSpaces API on top (``workspace``, ``iterator``)."""
