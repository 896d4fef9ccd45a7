// An example parameters file for infra/main.bicep: copy it, change what differs, and pass it to
// `infra/deploy.sh --parameters FILE` (command-line options win over it) or to
// `az deployment group create -g RG -f infra/main.bicep -p FILE`. No secret belongs here: deploy.sh puts the
// ServiceNow password and client secret in Key Vault from ITSMC_PASSWORD / ITSMC_CLIENT_SECRET, as the
// deployment's outputs ask (serviceNowConfigured, oauth, connectionName), whether this file or its options set
// the connection.

using 'main.bicep'

// 3-11 lowercase letters and digits; resource names are this plus a hash of the resource group.
param namePrefix = 'itsmc'

// The workspace ITSMC wrote to, so existing ServiceDesk_CL queries and workbooks keep working. Leave it out to
// create <prefix>-logs in the deployment's resource group.
// param workspaceResourceId = '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/monitoring/providers/Microsoft.OperationalInsights/workspaces/ops-logs'

// FlexConsumption unless the region has no Flex Consumption yet (az functionapp list-flexconsumption-locations);
// deploy.sh checks that itself and deploys Consumption there, over this value, unless --plan says otherwise.
param planKind = 'FlexConsumption'

// Without a URL the connection is a dry run: /api/workitems shows the requests it would have sent.
param serviceNowUrl = 'https://contoso.service-now.com'
param serviceNowUsername = 'svc.itsmc'
// Set for OAuth (then the client secret is needed too); leave empty for Basic authentication.
param serviceNowClientId = ''
param connectionName = 'default'
param workItemType = 'Incident'

// NCRONTAB with seconds: every 15 minutes.
param syncSchedule = '0 */15 * * * *'

// Only what differs from the binary's defaults (README, "Settings"); a name not listed in main.bicep's
// `tunables` type fails the deployment.
param settings = {
  ITSMC_GROUPING: 'rule'
  ITSMC_ASSIGNMENT_GROUP: 'Cloud Operations'
  ITSMC_SYNC_DAYS: '30'
  RUST_LOG: 'info'
}

// Secure Webhook: the app registration that stands for itsmc (README, "Secure Webhook"). All three, or none.
param secureWebhookTenantId = ''
param secureWebhookAppObjectId = ''
param secureWebhookIdentifierUri = ''

param actionGroupShortName = 'itsmc'

param tags = {
  workload: 'itsmc'
}

// Turn on for production if the vault must survive a deletion; destroy.sh can then no longer purge it.
param keyVaultPurgeProtection = false
