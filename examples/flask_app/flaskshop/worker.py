"""`pgq worker -A flaskshop.worker`: the Flask app, and the pgq app its tasks use."""

from flaskshop import create_app

flask_app = create_app()
app = flask_app.extensions["pgq"]
