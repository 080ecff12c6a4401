"""The dashboard: server-rendered pages over the JobService, for people with a browser.

Pages sit beside the JSON API (which stays where it is) and are left out of its OpenAPI
schema. A person signs in with an API key and holds a session cookie (sessions.py); the
pages, their live streams and their fragments are in pages.py, live.py and logs.py.
"""
