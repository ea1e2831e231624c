from django.urls import path

from . import views

app_name = "example_app"

urlpatterns = [
    path("", views.demo, name="demo"),
    path("demo/calculate/", views.demo_calculate, name="demo_calculate"),
    path("demo/checks/", views.demo_checks, name="demo_checks"),
    path("demo/retried/", views.demo_retried, name="demo_retried"),
    path("demo/cancelled/", views.demo_cancelled, name="demo_cancelled"),
    path("demo/orders/", views.demo_place_order, name="demo_place_order"),
    path("demo/orders/<int:run_id>/", views.demo_order, name="demo_order"),
    path("demo/orders/<int:run_id>/decide/", views.demo_decide, name="demo_decide"),
    path("calculate/", views.calculate, name="calculate"),
    path("order/", views.order, name="order"),
    path("orders/", views.create_order, name="create_order"),
    path("orders/new/", views.new_order, name="new_order"),
    path("orders/<int:run_id>/", views.order_status, name="order_status"),
]
