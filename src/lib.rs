//! itsmc: Azure Monitor alerts to ITSM work items, and ITSM records back into Log Analytics.
//!
//! The alert path reads top to bottom: [`alert`] parses a payload, [`workitem`] decides what to do,
//! [`store`] claims it, [`itsm`] calls the product, [`intake`] ties those together. [`server`] exposes it
//! over HTTP for the Azure Functions host and local use; [`lambda`] puts the same router behind AWS Lambda.

pub mod alert;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod http;
pub mod ingest;
pub mod intake;
pub mod itsm;
pub mod lambda;
pub mod logging;
pub mod outbox;
pub mod package;
pub mod secrets;
pub mod server;
pub mod store;
pub mod sync;
pub mod timer;
pub mod workitem;

use std::sync::Arc;

/// Everything a running itsmc holds, built once from the configuration.
pub struct App {
    pub intake: Arc<intake::Intake>,
    pub syncer: Arc<sync::Syncer>,
    /// Checks Secure Webhook tokens on the alert route, when `ITSMC_ENTRA_TENANT_ID` is set.
    pub entra: Option<Arc<server::entra::EntraValidator>>,
}

impl App {
    /// Open the store and build the clients; errors name what to fix.
    pub async fn start(config: config::Config) -> Result<App, String> {
        let http = http::build_client(&config.http).map_err(|e| e.to_string())?;
        let mut identities = Identities { http: http.clone(), made: Vec::new() };
        let store = open_store(&config, &http, &mut identities).await?;
        let entra =
            config.entra.clone().map(|settings| Arc::new(server::entra::EntraValidator::new(settings, http.clone())));
        let vault = match &config.key_vault {
            Some(settings) => {
                let credential = identities.get(settings.client_id.as_deref()).map_err(|e| e.to_string())?;
                let vault = secrets::Secrets::key_vault(&settings.url, credential, http.clone())
                    .map_err(|e| format!("ITSMC_KEY_VAULT_URL: {e}"))?;
                Some(Arc::new(vault))
            }
            None => None,
        };
        let sink = match &config.logs {
            Some(settings) => {
                let credential =
                    identities.get(settings.client_id.as_deref()).map_err(|e| format!("ITSMC_LOGS_ENDPOINT: {e}"))?;
                ingest::Sink::LogsIngestion(Box::new(ingest::client::LogsIngestion::new(
                    settings.clone(),
                    credential,
                    http.clone(),
                )))
            }
            None => ingest::Sink::Local(ingest::local::LocalRows::new(Arc::clone(&store))),
        };
        let intake = Arc::new(intake::Intake::new(Arc::new(config), store, http, vault));
        let syncer = Arc::new(sync::Syncer::new(Arc::clone(&intake), sink));
        Ok(App { intake, syncer, entra })
    }

    /// The HTTP routes of this app.
    pub fn router(&self) -> axum::Router {
        server::router(Arc::clone(&self.intake), Arc::clone(&self.syncer), self.entra.clone())
    }
}

/// The store the settings choose (see [`config::StateSettings`]); Table Storage tables are created if missing.
async fn open_store(
    config: &config::Config,
    http: &reqwest::Client,
    identities: &mut Identities,
) -> Result<Arc<dyn store::Store>, String> {
    use config::StateSettings;
    let table = match &config.state {
        StateSettings::Embedded { data_dir } => {
            let store = store::EmbeddedStore::open(data_dir).map_err(|e| format!("ITSMC_DATA_DIR: {e}"))?;
            return Ok(Arc::new(store));
        }
        StateSettings::TableConnectionString { connection_string, prefix } => {
            store::TableStore::from_connection_string(connection_string.expose(), prefix, http.clone())
                .map_err(|e| format!("AzureWebJobsStorage: {e}"))?
        }
        StateSettings::TableIdentity { endpoint, client_id, prefix } => {
            let credential =
                identities.get(client_id.as_deref()).map_err(|e| format!("AzureWebJobsStorage (identity): {e}"))?;
            store::TableStore::with_credential(endpoint.clone(), credential, prefix, http.clone())
                .map_err(|e| format!("AzureWebJobsStorage__tableServiceUri: {e}"))?
        }
    };
    table.ensure_tables().await.map_err(|e| format!("AzureWebJobsStorage: {e}"))?;
    Ok(Arc::new(table))
}

/// The app's Azure credentials, one per identity: Table Storage, Key Vault and Logs Ingestion usually share
/// one, and each made credential sets up its own identity client.
struct Identities {
    http: reqwest::Client,
    made: Vec<(Option<String>, Arc<dyn azure_core::credentials::TokenCredential>)>,
}

impl Identities {
    /// The credential of the user-assigned identity `client_id`, or of the app's own.
    fn get(
        &mut self,
        client_id: Option<&str>,
    ) -> Result<Arc<dyn azure_core::credentials::TokenCredential>, secrets::SecretError> {
        if let Some((_, made)) = self.made.iter().find(|(id, _)| id.as_deref() == client_id) {
            return Ok(Arc::clone(made));
        }
        let made = secrets::credential(self.http.clone(), client_id)?;
        self.made.push((client_id.map(str::to_owned), Arc::clone(&made)));
        Ok(made)
    }
}
