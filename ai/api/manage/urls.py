from rest_framework.routers import SimpleRouter

from .views import LinkViewSet, ModelViewSet, UpstreamViewSet

router = SimpleRouter(trailing_slash=False)
router.register("models", ModelViewSet, basename="aimodel")
router.register("upstreams", UpstreamViewSet, basename="upstream")
router.register("links", LinkViewSet, basename="modellink")

urlpatterns = router.urls
