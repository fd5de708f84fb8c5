"""Storage: what outlives a process — checkpoints, the response cache, their codec.

Everything here is JSON in SQLite, never pickles, so a stored file is data a
newer plait (or a person with ``sqlite3``) can read. Nothing in this package
knows about scheduling: the run driver hands it finished values and asks it
for stored ones.
"""
