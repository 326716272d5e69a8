"""The credit package catalog: what a user can buy, stored in the credits table (docs/design.md section 3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from credits import keys, money
from credits.errors import PackageNotFound
from credits.ledger import MAX_AMOUNT
from credits.store import DynamoStore, Put, Store

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# ISO 4217 currencies Stripe charges in (its "supported currencies" list, presentment side).
STRIPE_CURRENCIES = frozenset(
    [
        "usd",
        "aed",
        "afn",
        "all",
        "amd",
        "ang",
        "aoa",
        "ars",
        "aud",
        "awg",
        "azn",
        "bam",
        "bbd",
        "bdt",
        "bgn",
        "bif",
        "bmd",
        "bnd",
        "bob",
        "brl",
        "bsd",
        "bwp",
        "byn",
        "bzd",
        "cad",
        "cdf",
        "chf",
        "clp",
        "cny",
        "cop",
        "crc",
        "cve",
        "czk",
        "djf",
        "dkk",
        "dop",
        "dzd",
        "egp",
        "etb",
        "eur",
        "fjd",
        "fkp",
        "gbp",
        "gel",
        "gip",
        "gmd",
        "gnf",
        "gtq",
        "gyd",
        "hkd",
        "hnl",
        "htg",
        "huf",
        "idr",
        "ils",
        "inr",
        "isk",
        "jmd",
        "jpy",
        "kes",
        "kgs",
        "khr",
        "kmf",
        "krw",
        "kyd",
        "kzt",
        "lak",
        "lbp",
        "lkr",
        "lrd",
        "lsl",
        "mad",
        "mdl",
        "mga",
        "mkd",
        "mmk",
        "mnt",
        "mop",
        "mur",
        "mvr",
        "mwk",
        "mxn",
        "myr",
        "mzn",
        "nad",
        "ngn",
        "nio",
        "nok",
        "npr",
        "nzd",
        "pab",
        "pen",
        "pgk",
        "php",
        "pkr",
        "pln",
        "pyg",
        "qar",
        "ron",
        "rsd",
        "rub",
        "rwf",
        "sar",
        "sbd",
        "scr",
        "sek",
        "sgd",
        "shp",
        "sle",
        "sos",
        "srd",
        "std",
        "szl",
        "thb",
        "tjs",
        "top",
        "try",
        "ttd",
        "twd",
        "tzs",
        "uah",
        "ugx",
        "uyu",
        "uzs",
        "vnd",
        "vuv",
        "wst",
        "xaf",
        "xcd",
        "xof",
        "xpf",
        "yer",
        "zar",
        "zmw",
    ]
)
# Currencies without a minor unit: a price of 500 JPY is ¥500 (Stripe's zero-decimal list).
ZERO_DECIMAL = money.ZERO_DECIMAL

PackageId = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MAX_EXPIRES_IN_DAYS = 3650  # ten years: a package's credits expire at most this long after the purchase


class Package(BaseModel):
    """A credit package: `credits` for `price` minor units of `currency`; with `expiresInDays`, the
    credits of each purchase expire that many days after it is credited (none: never)."""

    # the catalog file says `expiresInDays`; the package item stores `expires_in_days`
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_by_name=True, validate_by_alias=True)

    id: PackageId
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    credits: Annotated[int, Field(gt=0, le=MAX_AMOUNT)]
    price: Annotated[int, Field(gt=0, le=99_999_999)]  # Stripe's cap on unit_amount
    currency: str
    expires_in_days: Annotated[int | None, Field(alias="expiresInDays", ge=1, le=MAX_EXPIRES_IN_DAYS)] = None
    active: bool = True
    stripe_product_id: str | None = None
    stripe_price_id: str | None = None

    @field_validator("currency")
    @classmethod
    def _stripe_currency(cls, value: str) -> str:
        if value not in STRIPE_CURRENCIES:
            raise ValueError("must be a lower-case ISO 4217 currency code that Stripe supports")
        return value

    def public(self) -> dict[str, Any]:
        """The API's Package object."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "credits": self.credits,
            "price": self.price,
            "currency": self.currency,
        }

    def sale_terms(self) -> dict[str, str]:
        """The terms of a sale of this package as a Checkout Session's metadata carries them: fixed at
        checkout, so the webhook credits what the user saw whatever the catalog says later
        (`credits.payments.Terms` reads them back). `expiresInDays` only for credits that expire."""
        terms = {"credits": str(self.credits), "price": str(self.price), "currency": self.currency}
        if self.expires_in_days is not None:
            terms["expiresInDays"] = str(self.expires_in_days)
        return terms


class CatalogStore(Store, Protocol):
    """What the catalog needs of the table: a `Store` that also reads a sparse index."""

    def query_index(self, index: str, attr: str, value: str) -> Iterator[dict[str, Any]]: ...


class Catalog:
    """Reads and writes packages; one Query on a sparse index lists them, never a Scan.

    `Catalog(client, table_name)` on DynamoDB; `Catalog.on(store)` on any store (the simulator's)."""

    def __init__(
        self, client: DynamoDBClient | None = None, table_name: str = "", *, store: CatalogStore | None = None
    ) -> None:
        if store is None:
            if client is None:
                raise TypeError("Catalog needs a DynamoDB client and table name, or a store")
            store = DynamoStore(client, table_name)
        self.store = store

    @classmethod
    def on(cls, store: CatalogStore) -> Catalog:
        return cls(store=store)

    def put(self, package: Package) -> None:
        item = package.model_dump()
        package_id = item.pop("id")
        if item["expires_in_days"] is None:
            del item["expires_in_days"]  # credits that never expire: the item as before expiry existed
        self.store.write(
            Put(
                {
                    "pk": keys.package_pk(package_id),
                    "sk": keys.PACKAGE_SK,
                    "package_id": package_id,
                    "catalog": keys.CATALOG_PARTITION,
                    **item,
                }
            )
        )

    def get(self, package_id: str) -> Package | None:
        item = self.store.get((keys.package_pk(package_id), keys.PACKAGE_SK))
        return None if item is None else _package(item)

    def active(self, package_id: str) -> Package:
        """A package on sale, or PackageNotFound."""
        package = self.get(package_id)
        if package is None or not package.active:
            raise PackageNotFound(package_id)
        return package

    def all(self) -> list[Package]:
        """Every package, active or not, by currency, then price, then id: the one order of the
        catalog (GET /credit-packages lists `listed()`, `credits packages list` all of them)."""
        found = self.store.query_index(keys.CATALOG_INDEX, "catalog", keys.CATALOG_PARTITION)
        return sorted((_package(item) for item in found), key=lambda p: (p.currency, p.price, p.id))

    def listed(self) -> list[Package]:
        """The packages on sale."""
        return [p for p in self.all() if p.active]


def _package(item: dict[str, Any]) -> Package:
    fields = {k: item[k] for k in Package.model_fields if k in item and k != "id"}
    return Package(id=item["package_id"], **fields)
