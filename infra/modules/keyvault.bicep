// The vault for the ServiceNow connection's secrets (password, OAuth client secret, refresh token), which
// therefore never appear in app settings or deployment history. RBAC mode, so that access is granted by role
// assignments next to the rest of the deployment (modules/roles.bicep), not by access policies.

param name string
param location string
param tags object

@description('Once on it cannot be turned off, and the vault cannot be purged for the retention period.')
param enablePurgeProtection bool

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // The API takes only true here (turning it on is irreversible), so "off" means leaving it out.
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
  }
}

output name string = vault.name
// Ends with '/'.
output uri string = vault.properties.vaultUri
