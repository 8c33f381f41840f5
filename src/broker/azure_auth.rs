//! How a replica signs in to an Azure storage account: an account key (Shared Key signing),
//! a SAS token, or the platform's identity (managed or workload identity), and the SDK client
//! options and URLs each way needs. Kept apart from the queue logic in `azure_queue.rs`.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Url};

use super::job::BrokerError;
use super::shared_key::SharedKeyPolicy;
use crate::config::{AzureCredentials, AzureTarget};

/// How this replica signs in to the storage account.
pub(super) enum Auth {
    /// `AZURE_STORAGE_KEY`: Shared Key signing (Azurite, connection strings).
    SharedKey(Arc<SharedKeyPolicy>),
    /// `AZURE_STORAGE_SAS_TOKEN`: a SAS appended to every URL.
    Sas(String),
    /// Entra ID tokens: managed identity on Container Apps / App Service / VMs, or workload
    /// identity on Kubernetes.
    Token(Arc<dyn TokenCredential>),
}

impl Auth {
    /// An account key, else a SAS, else the platform's identity.
    pub(super) fn new(
        target: &AzureTarget,
        credentials: &AzureCredentials,
    ) -> Result<(Auth, &'static str), BrokerError> {
        let bad = |why: String| BrokerError::BadUrl(format!("{}: {why}", target.display));
        if let Some(key) = &credentials.account_key {
            let policy = SharedKeyPolicy::new(&target.account, key)
                .map_err(|e| bad(format!("--azure-storage-key (AZURE_STORAGE_KEY): {e}")))?;
            return Ok((Auth::SharedKey(Arc::new(policy)), "account key"));
        }
        if let Some(sas) = &credentials.sas_token {
            return Ok((Auth::Sas(sas.trim_start_matches('?').to_string()), "SAS"));
        }
        if !target.queue_endpoint.starts_with("https://") {
            return Err(bad(
                "an identity's token is sent over https only; give --azure-storage-key \
                 (AZURE_STORAGE_KEY) or --azure-storage-sas-token for an http endpoint such \
                 as Azurite"
                    .into(),
            ));
        }
        if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            let c = azure_identity::WorkloadIdentityCredential::new(None)
                .map_err(|e| bad(format!("workload identity: {e}")))?;
            return Ok((Auth::Token(c), "workload identity"));
        }
        let options = credentials.client_id.clone().map(|id| {
            azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(id)),
                ..Default::default()
            }
        });
        let c = azure_identity::ManagedIdentityCredential::new(options)
            .map_err(|e| bad(format!("managed identity: {e}")))?;
        Ok((Auth::Token(c), "managed identity"))
    }

    pub(super) fn credential(&self) -> Option<Arc<dyn TokenCredential>> {
        match self {
            Auth::Token(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// The SDK's options: few, quick retries (the ingress has its own backoff) and the signing
    /// policy when there is one.
    pub(super) fn client_options(&self) -> ClientOptions {
        let mut o = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(100),
                max_retries: 2,
                max_total_elapsed: azure_core::time::Duration::seconds(10),
                max_delay: azure_core::time::Duration::seconds(1),
            }),
            ..Default::default()
        };
        if let Auth::SharedKey(p) = self {
            o.per_try_policies.push(p.clone());
        }
        o
    }

    pub(super) fn url(&self, base: &str, path: &str) -> Result<Url, BrokerError> {
        let mut url = format!("{}/{path}", base.trim_end_matches('/'));
        if let Auth::Sas(sas) = self {
            url.push('?');
            url.push_str(sas);
        }
        Url::parse(&url).map_err(|e| BrokerError::BadUrl(format!("{url}: {e}")))
    }
}
