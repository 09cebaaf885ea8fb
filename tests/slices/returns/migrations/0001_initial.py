"""The returns' command state and view."""

from peewee import BigIntegerField, CharField, Model, PostgresqlDatabase


def up(migrator, db):
    schema = "returns" if isinstance(db, PostgresqlDatabase) else None

    class ReturnCount(Model):
        sku = CharField(max_length=64, primary_key=True)
        version = BigIntegerField()

        class Meta:
            database = db
            table_name = "returns_counts"

    class ReturnedQuantity(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField()

        class Meta:
            database = db
            table_name = "returns_view"

    for model in (ReturnCount, ReturnedQuantity):
        model._meta.schema = schema
    db.create_tables([ReturnCount, ReturnedQuantity])


def down(migrator, db):
    prefix = '"returns".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}returns_view")
    db.execute_sql(f"DROP TABLE {prefix}returns_counts")
