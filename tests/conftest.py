"Shared pytest configuration for lskd's tests"

def pytest_configure(config):
    # `server`: starts a real llama.cpp server (and fetches a small model); runs by default, deselect with -m "not server"
    config.addinivalue_line('markers', 'server: end-to-end test with a real local teacher LLM server')
