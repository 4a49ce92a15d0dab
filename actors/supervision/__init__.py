"""The supervisor's parts, one responsibility each (supervisor.py keeps the loop and the routing).

- ``runfiles``: the run directory's lock, run.json, runs.jsonl, endpoints.json;
- ``process``: one actor's OS process: spawn, signal, reap, and what it said on the way out;
- ``child``: one supervised actor (OTP's child): its state, timers and process;
- ``policy``: the restart policy, a pure function of an exit and the restart history;
- ``children``: the supervised actors together: lifecycle messages, exits, timeouts;
- ``control``: the ctl commands as a table;
- ``fanout``: a ctl command sent on to the actors that take it, in order, with a deadline;
- ``peers``: placement: this supervisor's share of the actors, and its peers' states.

They live under actors/ because they are the other half of the actor lifecycle
(actors/base.py) and use its declarations (actors/registry.py); bus/ stays the
wire that every process, clients included, imports.
"""
