"""Places one order over REST with Python `requests`, the HTTP client the
order services' users reach for: pay (and retry the POST with the same
`Idempotency-Key`), ship, read the order's status, and ask for a payment
that does not exist.

Usage: place_order.py PAYMENT_URL SHIPPING_URL STATUS_URL ORDER_ID

Prints one JSON object with what each step answered.
"""

import json
import sys

import requests


def main():
    payment, shipping, status, order = sys.argv[1:5]
    session = requests.Session()
    pay = {"orderId": order, "amountMinor": "990", "currency": "EUR"}
    key = {"Idempotency-Key": order + "-pay"}
    first = session.post(payment + "/v1/payments", json=pay, headers=key, timeout=10)
    again = session.post(payment + "/v1/payments", json=pay, headers=key, timeout=10)
    ship = {
        "orderId": order,
        "idempotencyKey": order + "-ship",
        "address": {"name": "Grace", "line1": "1 Compiler Way", "city": "Arlington", "country": "US"},
    }
    shipped = session.post(shipping + "/v1/shipments", json=ship, timeout=10)
    report = session.get(status + "/v1/orders/" + order + "/status", timeout=10)
    missing = session.get(payment + "/v1/payments/" + order + "-nobody", timeout=10)
    print(json.dumps({
        "pay": [first.status_code, first.json()],
        "again": [again.status_code, again.json()],
        "ship": [shipped.status_code, shipped.json()],
        "status": [report.status_code, report.json()],
        "missing": [missing.status_code, missing.json()],
    }))


if __name__ == "__main__":
    main()
