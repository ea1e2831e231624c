from django.urls import path

from . import views

app_name = "example_app"

urlpatterns = [
    path("calculate/", views.calculate, name="calculate"),
    path("order/", views.order, name="order"),
]
