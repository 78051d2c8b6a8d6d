"""What an audit costs before it runs: exact counts from the config and the pool's size (:mod:`.counts`), model
shapes (:mod:`.models`), and time on a named device (:mod:`.estimate`)."""
