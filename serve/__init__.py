"""``dalle serve``: a local web page for generating and editing images with one loaded model.

A small ASGI app (starlette + uvicorn, the ``serve`` extra) with one static page;
``serve.app.create_app`` builds it, ``serve.app.run`` serves it.
"""
