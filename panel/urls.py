from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]

handler404 = "panel.errors.handler404"
handler500 = "panel.errors.handler500"
