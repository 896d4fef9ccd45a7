// itsmc on Azure: everything the connector needs in one resource group, so that `infra/deploy.sh` (or
// `az deployment group create -f infra/main.bicep`) gives a working Azure Monitor -> ServiceNow connector with no
// secret in any app setting. The app's system identity reaches storage, Key Vault and the Logs Ingestion API;
// the only shared secret left is the Functions host key in the action group's webhook URL.
//
// The parameter and output names are a contract with infra/deploy.sh, and a Rust test reads this file to check
// that every setting the binary reads is either set here, offered in `tunables`, or listed in `notInAzure`:
// write setting names literally, never build them from pieces.

targetScope = 'resourceGroup'

metadata description = 'itsmc: Azure Monitor alerts to ServiceNow work items, ServiceNow incidents to Log Analytics'

// ---------------------------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------------------------

// The settings an operator may tune. Sealed, so that a misspelt name fails the deployment instead of being
// ignored by the binary; every value is a string because app settings are strings (the binary parses and
// checks them at start-up and names the setting it refuses).
@sealed()
type tunables = {
  @description('Work item per alert (alert), per rule (rule) or per configuration item (ci). Default alert.')
  ITSMC_GROUPING: string?
  @description('An alert that fires again after its work item closed: new, reopen or ignore. Default new.')
  ITSMC_REFIRE_AFTER_CLOSE: string?
  @description('When the alert resolves: resolve, comment or nothing. Default resolve.')
  ITSMC_ON_RESOLVE: string?
  @description('close_code on resolve. Default "Solved (Permanently)".')
  ITSMC_CLOSE_CODE: string?
  @description('Template for close_notes on resolve.')
  ITSMC_CLOSE_NOTES: string?
  @description('Length of short_description. Default 160.')
  ITSMC_SHORT_DESCRIPTION_MAX: string?
  @description('Default caller_id (template; sys_id or display name).')
  ITSMC_CALLER_ID: string?
  @description('Default assignment_group (template; sys_id or display name).')
  ITSMC_ASSIGNMENT_GROUP: string?
  @description('Default category (template).')
  ITSMC_CATEGORY: string?
  @description('Default subcategory (template).')
  ITSMC_SUBCATEGORY: string?
  @description('Default contact_type (template).')
  ITSMC_CONTACT_TYPE: string?
  @description('Prefix of itsmc\'s Table Storage tables (letters and digits). Default itsmc.')
  ITSMC_TABLE_PREFIX: string?
  @description('The ServiceNow OAuth application\'s Refresh Token Lifespan, seconds. Default 8640000.')
  ITSMC_REFRESH_TOKEN_LIFESPAN_SECS: string?
  @description('Warn this many days before the refresh token ends. Default 14.')
  ITSMC_REFRESH_TOKEN_WARN_DAYS: string?
  @description('How long the alert route waits for ServiceNow before answering 202, ms. Default 5000.')
  ITSMC_ALERT_BUDGET_MS: string?
  @description('Requests a connection may have in flight. Default 64.')
  ITSMC_MAX_CONCURRENT_REQUESTS: string?
  @description('Requests a connection may start per second; a little under the instance\'s rate limit rule. Default 0: none of its own (it learns the pace from 429s).')
  ITSMC_MAX_REQUESTS_PER_SECOND: string?
  @description('First retry delay of the outbox, ms. Default 2000.')
  ITSMC_OUTBOX_BACKOFF_MS: string?
  @description('Retry a delivery this long before dead-lettering it, seconds. Default 86400.')
  ITSMC_OUTBOX_MAX_AGE_SECS: string?
  @description('How long an instance holds a delivery before another may take it over, seconds. Default 60.')
  ITSMC_OUTBOX_LEASE_SECS: string?
  @description('How long finished deliveries are kept, days. Default 7.')
  ITSMC_OUTBOX_KEEP_DAYS: string?
  @description('Also require the app role ActionGroupsSecureWebhook in Secure Webhook tokens (true/false).')
  ITSMC_ENTRA_REQUIRE_ROLE: string?
  @description('Entra authority for national clouds. Default https://login.microsoftonline.com/.')
  ITSMC_ENTRA_AUTHORITY: string?
  @description('How far back a first sync starts, 1 to 120 days. Default 120.')
  ITSMC_SYNC_DAYS: string?
  @description('Incident, ChangeRequest or both, comma-separated. Default both.')
  ITSMC_SYNC_KINDS: string?
  @description('Records per ServiceNow request, 1 to 10000. Default 1000.')
  ITSMC_SYNC_PAGE_SIZE: string?
  @description('Largest Logs Ingestion batch, bytes of JSON. Default 999984.')
  ITSMC_SYNC_BATCH_BYTES: string?
  @description('How far before its watermark a sync reads again, seconds. Default 300.')
  ITSMC_SYNC_OVERLAP_SECS: string?
  @description('How long one timer invocation may sync, seconds; keep it under host.json functionTimeout (10 min).')
  ITSMC_SYNC_BUDGET_SECS: string?
  @description('Key Vault secret name of the password, if not <connection>-password.')
  ITSMC_PASSWORD_SECRET_NAME: string?
  @description('Key Vault secret name of the OAuth client secret, if not <connection>-client-secret.')
  ITSMC_CLIENT_SECRET_SECRET_NAME: string?
  @description('Key Vault secret name of the refresh token, if not <connection>-refresh-token.')
  ITSMC_REFRESH_TOKEN_SECRET_NAME: string?
  @description('Log filter, e.g. info or itsmc=debug. Default info.')
  RUST_LOG: string?
}

@description('3-11 lowercase letters and digits; every resource name derives from it.')
@minLength(3)
@maxLength(11)
param namePrefix string

@description('Region of everything but the data collection rule, which follows the workspace.')
param location string = resourceGroup().location

@description('An existing Log Analytics workspace (full resource id; any resource group or subscription of the tenant). Empty: create <prefix>-logs here.')
param workspaceResourceId string = ''

@description('FlexConsumption (default: Linux Consumption retires on 30 September 2028) or Consumption (Linux, Y1). Choose once: a plan cannot change kind in place.')
@allowed([
  'FlexConsumption'
  'Consumption'
])
param planKind string = 'FlexConsumption'

@description('ServiceNow instance URL, https://<instance>.service-now.com. Empty: the connection is a dry run.')
param serviceNowUrl string = ''

@description('ServiceNow integration user (itil role; evt_mgmt_integration for Event).')
param serviceNowUsername string = ''

@description('ServiceNow OAuth client id. Set: OAuth (client secret, password and refresh token in Key Vault), and the app may write refresh tokens back to the vault.')
param serviceNowClientId string = ''

@description('The connection\'s name; its Key Vault secrets are <name>-password, <name>-client-secret, <name>-refresh-token.')
param connectionName string = 'default'

@allowed([
  'Incident'
  'Event'
  'Alert'
])
param workItemType string = 'Incident'

@description('When the ServiceNow -> Log Analytics sync runs (NCRONTAB with seconds).')
param syncSchedule string = '0 */15 * * * *'

@description('Tunables, merged into the app settings.')
param settings tunables = {}

@description('Object id of whoever runs deploy.sh (user or service principal): may then store the connection\'s secrets, and upload the Consumption package. Empty: no grant.')
param deployerObjectId string = ''

@description('Secure Webhook: the tenant of the app registration that represents itsmc. All three set = Entra-authenticated webhook.')
param secureWebhookTenantId string = ''

@description('Secure Webhook: that app registration\'s object id.')
param secureWebhookAppObjectId string = ''

@description('Secure Webhook: its Application ID URI (e.g. api://itsmc); also what itsmc accepts as the token audience.')
param secureWebhookIdentifierUri string = ''

@description('Create the action group. deploy.sh passes false before the package is uploaded: until the host has run once, it has no key to put in the webhook URL.')
param withActionGroup bool = true

@maxLength(12)
param actionGroupShortName string = 'itsmc'

param tags object = {}

@description('Key Vault purge protection. Off by default so that destroy.sh can purge the vault and a redeploy can reuse its name; once on, it cannot be turned off.')
param keyVaultPurgeProtection bool = false

@description('Flex Consumption only: most instances the app may scale out to.')
@minValue(1)
@maxValue(1000)
param flexMaximumInstanceCount int = 10

// ---------------------------------------------------------------------------------------------------------------
// Names and derived values
// ---------------------------------------------------------------------------------------------------------------

// The columns the code, the tests' emulator and these tables share: one list in schema/.
var serviceDeskSchema = loadJsonContent('../schema/ServiceDesk_CL.json')
var serviceDeskLogSchema = loadJsonContent('../schema/ServiceDeskLog_CL.json')

var suffix = uniqueString(resourceGroup().id)
var storageAccountName = take('${namePrefix}${suffix}', 24)
var functionAppName = '${namePrefix}-${suffix}'
// Vault names must start with a letter; the prefix may not.
var keyVaultName = take('kv${namePrefix}${suffix}', 24)

var isFlex = planKind == 'FlexConsumption'
// Flex deploys to a container the platform manages; Linux Consumption runs a zip from a blob URL.
var deploymentContainerName = 'deployments'
var packageContainerName = 'packages'

var secureWebhook = !empty(secureWebhookTenantId) && !empty(secureWebhookAppObjectId) && !empty(secureWebhookIdentifierUri)

// An existing workspace may live elsewhere: its tables are deployed in its own resource group.
var createWorkspace = empty(workspaceResourceId)
var workspaceIdParts = split(workspaceResourceId, '/')
var workspaceSubscriptionId = createWorkspace ? subscription().subscriptionId : workspaceIdParts[2]
var workspaceResourceGroup = createWorkspace ? resourceGroup().name : workspaceIdParts[4]
var workspaceName = createWorkspace ? '${namePrefix}-logs' : workspaceIdParts[8]

// Settings the binary reads that this deployment leaves unset on purpose (a test checks this list).
#disable-next-line no-unused-vars
var notInAzure = [
  'ITSMC_PASSWORD' // a secret: in Key Vault only (<connection>-password), never in an app setting
  'ITSMC_CLIENT_SECRET' // a secret: in Key Vault only (<connection>-client-secret)
  'ITSMC_DATA_DIR' // the embedded store's directory; on Azure the state is in Table Storage
  'ITSMC_CA_FILE' // extra trusted CAs, for private test instances; Azure trusts the public roots
  'ITSMC_CONNECTIONS_FILE' // a file on disk; the package carries none (one connection from app settings)
  'AzureWebJobsStorage' // a connection string holds the account key; this account refuses shared keys
  'AzureWebJobsStorage__tableServiceUri' // derived from AzureWebJobsStorage__accountName
  'AzureWebJobsStorage__blobServiceUri' // derived from AzureWebJobsStorage__accountName (the host's)
  'AzureWebJobsStorage__queueServiceUri' // derived from AzureWebJobsStorage__accountName (the host's)
  'AzureWebJobsStorage__clientId' // only for a user-assigned identity; the app uses its system identity
  // A user-assigned identity's client id, for Key Vault and Logs Ingestion: this deployment attaches no
  // user-assigned identity and grants its roles to the system identity only, so setting it would break both.
  'ITSMC_MANAGED_IDENTITY_CLIENT_ID'
  'ITSMC_API_KEY' // for hosts that check no key of their own (a Lambda Function URL); here the Functions host does
  'AZURE_TENANT_ID' // with AZURE_CLIENT_ID and AZURE_CLIENT_SECRET: an app registration's secret, for use outside
  'AZURE_CLIENT_ID' // Azure (Lambda); here the managed identity needs no secret
  'AZURE_CLIENT_SECRET'
  // Other products' settings: this template deploys a ServiceNow (or dry-run) connection only.
  'ITSMC_CHERWELL_AUTH_MODE'
  'ITSMC_CHERWELL_INCIDENT_OBJECT'
  'ITSMC_CHERWELL_CHANGE_OBJECT'
  'ITSMC_CHERWELL_CORRELATION_FIELD'
  'ITSMC_CHERWELL_STATUS_FIELD'
  'ITSMC_CHERWELL_RESOLVED_STATUS'
  'ITSMC_CHERWELL_REOPEN_STATUS'
  'ITSMC_CHERWELL_CLOSED_STATUSES'
  'ITSMC_CHERWELL_CLOSE_DESCRIPTION_FIELD'
  'ITSMC_CHERWELL_CLOSE_CODE_FIELD'
  'ITSMC_CHERWELL_JOURNAL_RELATIONSHIP'
  'ITSMC_CHERWELL_DATE_FORMAT'
  'ITSMC_CHERWELL_SYNC_FIELDS'
  'ITSMC_SCSM_TEMPLATE_ID'
  'ITSMC_SCSM_INCIDENT_PROJECTION_ID'
  'ITSMC_SCSM_CHANGE_PROJECTION_ID'
  'ITSMC_SCSM_CORRELATION_PROPERTY'
  'ITSMC_SCSM_CORRELATION_CLASS_ID'
  'ITSMC_SCSM_LANGUAGE_CODE'
  'ITSMC_SCSM_CLASSIFICATION_ID'
  'ITSMC_SCSM_SUPPORT_GROUP_ID'
  'ITSMC_SCSM_RESOLUTION_CATEGORY_ID'
  'ITSMC_PROVANCE_TENANT_ID'
  'ITSMC_PROVANCE_AUTHORITY'
  'ITSMC_PROVANCE_CUSTOMER'
  'ITSMC_PROVANCE_CORRELATION_FIELD'
  'ITSMC_PROVANCE_CI_FIELD'
  'ITSMC_PROVANCE_CHANGE_ENTITY_SET'
  'ITSMC_PROVANCE_CHANGE_COLUMNS'
  'ITSMC_PROVANCE_RESOLVED_STATUS'
]

// ---------------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------------

module workspace 'modules/workspace.bicep' = {
  name: 'itsmc-workspace-${suffix}'
  scope: resourceGroup(workspaceSubscriptionId, workspaceResourceGroup)
  params: {
    create: createWorkspace
    name: workspaceName
    location: location
    tags: tags
    tables: [
      serviceDeskSchema
      serviceDeskLogSchema
    ]
  }
}

// The tiles ITSMC's solution showed, as an Azure Workbook on the workspace (content: workbook.json).
module workbook 'modules/workbook.bicep' = {
  name: 'itsmc-workbook'
  params: {
    displayName: 'IT Service Management Connector (${namePrefix})'
    location: location
    tags: tags
    workspaceId: workspace.outputs.id
  }
}

module storage 'modules/storage.bicep' = {
  name: 'itsmc-storage'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    containers: [
      isFlex ? deploymentContainerName : packageContainerName
    ]
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'itsmc-monitoring'
  params: {
    appInsightsName: '${namePrefix}-appi'
    dcrName: '${namePrefix}-dcr'
    location: location
    tags: tags
    workspaceId: workspace.outputs.id
    workspaceLocation: workspace.outputs.location
    tables: [
      serviceDeskSchema
      serviceDeskLogSchema
    ]
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'itsmc-keyvault'
  params: {
    name: keyVaultName
    location: location
    tags: tags
    enablePurgeProtection: keyVaultPurgeProtection
  }
}

var packageBlobUrl = isFlex ? '' : '${storage.outputs.blobEndpoint}${packageContainerName}/itsmc.zip'

var appSettings = union(
  {
    // Identity-based host storage; itsmc reads the same setting and keeps its state in this account's tables.
    AzureWebJobsStorage__accountName: storage.outputs.name
    APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.appInsightsConnectionString
    ITSMC_KEY_VAULT_URL: keyVault.outputs.uri
    ITSMC_LOGS_ENDPOINT: monitoring.outputs.logsIngestionEndpoint
    ITSMC_DCR_IMMUTABLE_ID: monitoring.outputs.dcrImmutableId
    ITSMC_SERVICEDESK_STREAM: serviceDeskSchema.stream
    ITSMC_SERVICEDESKLOG_STREAM: serviceDeskLogSchema.stream
    ITSMC_PRODUCT: empty(serviceNowUrl) ? 'dry-run' : 'servicenow'
    ITSMC_CONNECTION_NAME: connectionName
    ITSMC_WORK_ITEM_TYPE: workItemType
    ITSMC_SYNC_SCHEDULE: syncSchedule
    ITSMC_LOG_FORMAT: 'json'
  },
  empty(serviceNowUrl) ? {} : {
    ITSMC_URL: serviceNowUrl
    ITSMC_USERNAME: serviceNowUsername
  },
  empty(serviceNowClientId) ? {} : {
    ITSMC_CLIENT_ID: serviceNowClientId
  },
  // Flex Consumption takes the runtime from functionAppConfig and does not use these settings (nor
  // WEBSITE_RUN_FROM_PACKAGE); Linux Consumption needs them.
  isFlex ? {} : {
    FUNCTIONS_WORKER_RUNTIME: 'custom'
    FUNCTIONS_EXTENSION_VERSION: '~4'
    // Read with the app's system identity (Storage Blob Data Owner, modules/roles.bicep): no SAS to expire.
    WEBSITE_RUN_FROM_PACKAGE: packageBlobUrl
  },
  secureWebhook ? {
    ITSMC_ENTRA_TENANT_ID: secureWebhookTenantId
    ITSMC_ENTRA_AUDIENCE: secureWebhookIdentifierUri
  } : {},
  settings
)

module functionApp 'modules/functionapp.bicep' = {
  name: 'itsmc-functionapp'
  params: {
    name: functionAppName
    planName: '${namePrefix}-plan'
    location: location
    tags: tags
    planKind: planKind
    appSettings: appSettings
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainerName}'
    maximumInstanceCount: flexMaximumInstanceCount
  }
}

module roles 'modules/roles.bicep' = {
  name: 'itsmc-roles'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    dcrName: monitoring.outputs.dcrName
    // With OAuth, ServiceNow hands out refresh tokens that itsmc writes back to the vault.
    functionWritesSecrets: !empty(serviceNowClientId)
    deployerObjectId: deployerObjectId
    deployerUploadsPackages: !isFlex
  }
}

module actionGroup 'modules/actiongroup.bicep' = if (withActionGroup) {
  name: 'itsmc-actiongroup'
  params: {
    name: '${namePrefix}-ag'
    shortName: actionGroupShortName
    tags: tags
    functionAppName: functionApp.outputs.name
    secureWebhookTenantId: secureWebhookTenantId
    secureWebhookAppObjectId: secureWebhookAppObjectId
    secureWebhookIdentifierUri: secureWebhookIdentifierUri
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Outputs (read by infra/deploy.sh)
// ---------------------------------------------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output alertUrl string = 'https://${functionApp.outputs.hostName}/api/alert'
output actionGroupId string = withActionGroup ? actionGroup.outputs.id : ''
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.uri
output storageAccountName string = storage.outputs.name
output workspaceResourceId string = workspace.outputs.id
output workbookId string = workbook.outputs.id
output logsIngestionEndpoint string = monitoring.outputs.logsIngestionEndpoint
output dcrImmutableId string = monitoring.outputs.dcrImmutableId
output planKind string = planKind
output packageBlobUrl string = packageBlobUrl
// The connection as deployed, whether its values came from deploy.sh's options or a parameters file: deploy.sh
// decides from these which secrets to store in Key Vault (<connectionName>-password, and with OAuth
// <connectionName>-client-secret). No secret is among them.
output connectionName string = connectionName
output serviceNowConfigured bool = !empty(serviceNowUrl)
output serviceNowUrl string = serviceNowUrl
output serviceNowUsername string = serviceNowUsername
output oauth bool = !empty(serviceNowClientId)
