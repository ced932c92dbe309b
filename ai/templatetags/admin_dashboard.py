"""The admin home's dashboard, read where templates/admin/index.html draws it."""

from django import template

from ..selectors.dashboard import HomeDashboard, home_dashboard

register = template.Library()


@register.simple_tag
def admin_home_dashboard() -> HomeDashboard:
    """``{% admin_home_dashboard as home %}``: the last 24 h from the rollups."""
    return home_dashboard()
