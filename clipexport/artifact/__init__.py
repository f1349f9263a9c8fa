"""The artifact contract: what an artifact folder holds and how its files are named. stdlib only,
so every other layer (the runtime included) can import it."""
