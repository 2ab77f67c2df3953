"""Forecast signals: price and carbon intensity on a time grid, from providers."""

from scheduler.forecasts.base import Forecast, Provider

__all__ = ["Forecast", "Provider"]
