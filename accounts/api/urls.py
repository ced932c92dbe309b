from rest_framework.routers import SimpleRouter

from .views import KeyViewSet

router = SimpleRouter(trailing_slash=False)
router.register("auth/keys", KeyViewSet, basename="apikey")

urlpatterns = router.urls
