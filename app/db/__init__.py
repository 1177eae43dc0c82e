from app.db.engine import DatabaseUnavailable, make_engine
from app.db.models import Base

__all__ = ["Base", "DatabaseUnavailable", "make_engine"]
