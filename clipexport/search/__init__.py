"""Search what was embedded: FAISS indexes over the bulk dataset (`index.py`, the index rule in
`plan.py`) and the torch-free `Searcher`."""
