//! The Azure Monitor Logs Ingestion API in a box (being written).
