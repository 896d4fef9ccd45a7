// The action group that alert rules point at: one webhook to itsmc's alert route, in the common alert schema
// (one shape for every monitoring service; itsmc parses the older ones too). With the three Secure Webhook
// values, Azure Monitor also sends an Entra token, which itsmc checks (main.bicep sets ITSMC_ENTRA_TENANT_ID
// and ITSMC_ENTRA_AUDIENCE to match).
//
// The host's default function key goes in the URL because the route's authLevel is `function`. It exists only
// once the host has run with the package, which is why main.bicep deploys this module on deploy.sh's second
// pass. Anyone who can read the action group can read the key.

param name string

@maxLength(12)
param shortName string

param tags object
param functionAppName string
param secureWebhookTenantId string
param secureWebhookAppObjectId string
param secureWebhookIdentifierUri string

var secureWebhook = !empty(secureWebhookTenantId) && !empty(secureWebhookAppObjectId) && !empty(secureWebhookIdentifierUri)

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

var functionKey = listKeys('${site.id}/host/default', '2024-04-01').functionKeys.default

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: name
  // Action groups are global resources.
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: shortName
    enabled: true
    webhookReceivers: [
      union(
        {
          name: 'itsmc'
          serviceUri: 'https://${site.properties.defaultHostName}/api/alert?code=${functionKey}'
          useCommonAlertSchema: true
        },
        secureWebhook ? {
          useAadAuth: true
          tenantId: secureWebhookTenantId
          objectId: secureWebhookAppObjectId
          identifierUri: secureWebhookIdentifierUri
        } : {
          useAadAuth: false
        }
      )
    ]
  }
}

output id string = actionGroup.id
