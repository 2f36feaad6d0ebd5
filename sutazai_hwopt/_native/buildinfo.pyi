DEBUG_BUILD: bool
CYTHON_VERSION: str

def is_compiled() -> bool: ...
