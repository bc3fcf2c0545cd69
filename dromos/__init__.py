"""The shared layer of both processes. The Celery app (dromos.celery) is loaded by the broker
(BrokerAppConfig.ready) and by `celery -A dromos`, not on import of this package: importing it
would choose a settings module, and dromos.wsgi must refuse to start without one."""
