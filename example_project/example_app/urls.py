from django.urls import path

from . import views

app_name = "example_app"

urlpatterns = [
    path("calculate/", views.calculate, name="calculate"),
    path("order/", views.order, name="order"),
    path("orders/", views.create_order, name="create_order"),
    path("orders/new/", views.new_order, name="new_order"),
    path("orders/<int:run_id>/", views.order_status, name="order_status"),
]
