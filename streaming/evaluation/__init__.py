"""Measuring the server from outside, as clients do: ``bench`` (latency, accuracy, cost on
recordings), ``soak`` (hours of traffic, nothing lost), ``journal_bench``. The server never
imports this package; scoring of texts is :mod:`streaming.scoring`, which both use.
"""
