"""The JSON API (Django REST framework): the same services and checks as the console."""
