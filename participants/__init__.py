"""The participant SDK and the services built on it."""
